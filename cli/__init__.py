"""The command line over models, workers and the gateway (`videogpt-serve`), `up`, and the HTTP client."""
