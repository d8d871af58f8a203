"""The figures an operator looks at first (console dashboard and ``GET /api/dashboard``)."""
