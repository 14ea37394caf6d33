"""rt_lab's Hydra launchers. Hydra only accepts launcher plugins from the `hydra_plugins` namespace."""
