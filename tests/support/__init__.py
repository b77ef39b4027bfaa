"""What tests share: test-only stages and DAGs, fixtures' servers, data makers (not tests themselves)."""
