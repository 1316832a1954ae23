"""The admin plane: the admin app, operations on orgs and keys, upstream origins, OpenAPI."""
