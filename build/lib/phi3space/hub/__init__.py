"""Everything that talks to the Hugging Face Hub: whose token acts, IDs vs paths, errors, pushes, cards, records."""
