"""One module per operation; each @flow is a deployable entrypoint."""
