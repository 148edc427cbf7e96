"""Controller: reconciles every VmGroup against vCenter."""
