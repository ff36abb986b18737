# The Kubernetes manifest checks.
