"""hubfleet: run a fleet of JupyterHubs with Prefect."""
