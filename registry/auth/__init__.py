"""Access control: API tokens, scopes and namespaces (issue 13)."""
