"""Administrative operations: garbage collection."""
