"""Python clients of fleetbatch's northbound dialects (`fleetbatch.sdk.legacy`)."""
