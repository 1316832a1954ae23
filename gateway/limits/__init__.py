"""The limits plane: admission control, the routing cache, the usage gate and its budgets,
the rate limiter, the spool, the store guard, invalidation and readiness."""
