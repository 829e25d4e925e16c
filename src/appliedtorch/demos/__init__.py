"""The tutorial's math demos, each returning its numbers and the analytic answer (`checks`),
and their figures (`figures`)."""
