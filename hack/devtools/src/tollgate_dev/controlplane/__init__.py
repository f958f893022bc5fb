"""The local Kubernetes control plane: etcd, kube-apiserver, controller-manager, scheduler and
kwok on loopback (`python -m tollgate_dev.controlplane.cluster up|down|env|status`)."""
