"""Database: engine and session scope, declarative base, ORM models."""
