"""Protocol-faithful fakes of external services, for offline tests."""
