"""The `kubernetes` pool: replicas as pods on a Kubernetes cluster, reached through a kubeconfig context."""
