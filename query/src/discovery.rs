//! Finding the agents from the Kubernetes API.
