"""The billing plane: provider webhooks and their signatures, the reconciler, usage export."""
