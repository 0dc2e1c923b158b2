"""APK rollouts: installations verified by heartbeats, and the funnel of one build."""
