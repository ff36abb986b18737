# The Prometheus and Grafana checks.
