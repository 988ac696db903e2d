"""DataModules: one per data kind, all resumable at the exact sample a checkpoint was taken."""
