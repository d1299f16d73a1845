"""Many runs side by side: sweep reports (`report`) and their figures (`plots`)."""
