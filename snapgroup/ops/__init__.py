"""Use cases: functions taking a context object."""
