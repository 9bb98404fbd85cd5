"""Job lifecycle: creation, validation, queue, worker, cancel, events and checkpoints."""
