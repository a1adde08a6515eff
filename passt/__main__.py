from passt.cli import main

main()
