"""TCP: the sans-I/O core, the tap-side driver, pasta's spliced path."""
