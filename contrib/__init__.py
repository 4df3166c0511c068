"""Domain strategies; modules here may need extras."""
