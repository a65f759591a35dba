"""The validation worker (client side): claims jobs through a RegistryBackend, loads adapters
onto cached base models, runs smoke checks and suites, reports back. It holds no database
credentials: with ``--url`` it needs nothing but the registry's URL."""
