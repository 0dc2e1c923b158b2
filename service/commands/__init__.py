"""Commands after their dispatch: expiry (a maintenance step) and push reachability."""
