"""The advisory lock keys serve processes coordinate by (transaction-scoped locks).

DISPATCH: one dispatcher at a time (pg_try_advisory_xact_lock), held from its claims
to its commit. A result for an interaction the applying transaction cannot see yet
(created and published by another serve process's turn that has not committed) waits
for it in shared mode (results.py), then looks again.
SWEEP: one sweeper at a time, so that an attempt is never reported lost twice.
"""

DISPATCH = 0x57A7D15A
SWEEP = 0x57A75EEB
