"""The fleet as operators see it: presence transitions, the device list and the fleet summary."""
