"""Apps, credentials, products, devices and groups: the services over the store."""
