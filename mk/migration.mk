# Live migration of a guest's connections (issue 25): passt/migrate/ (device
# state in upstream's format, TCP_REPAIR dump and restore), passt-repair
# (passt/repair_helper.py), vhost-user's dirty page log and device state.
#   make check-migration     the unit tests, and two QEMU 10 guests migrated
#                            between passts: ours and upstream 2026's, each
#                            way (test/e2e/test_migration.py, four cells,
#                            about 4 minutes; `make check` runs it too)
# The mixed cells need upstream's passt-repair, from the same build as its
# passt (mk/upstream.mk).

# (mk/upstream.mk is read after this file: its variables only in recipes.)
$(BUILD)/upstream-2026/passt-repair: | $(BUILD)/upstream-2026/pasta
	test -x $@ || $(UPSTREAM_2026_SHARED)/tools/build-upstream.sh $(abspath $(UPSTREAM_2026))

deps: $(BUILD)/upstream-2026/passt-repair

.PHONY: check-migration
check-migration: deps qemu10 guest
	$(PYTEST) -q -p no:cacheprovider test/unit/migrate test/unit/backends/test_vhost_user_migration.py \
		test/e2e/test_migration.py
