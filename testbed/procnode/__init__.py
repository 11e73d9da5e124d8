"""procnode: the testbed's process node (a small kubelet running pods as local processes)."""
