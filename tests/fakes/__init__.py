"""Local fakes of third-party services that speak their real wire protocols."""
