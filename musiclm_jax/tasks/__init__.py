"""SeqIO task and mixture registrations."""
