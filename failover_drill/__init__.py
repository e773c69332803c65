"""The failover drill: kill the active at chosen and random moments, prove nothing is lost."""
