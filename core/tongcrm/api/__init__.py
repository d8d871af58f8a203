"""HTTP plumbing shared by every controller: problem details, request ids, authentication, dependencies."""
