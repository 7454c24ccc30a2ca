"""Development checks that are not part of the deployed code (see tools/terraform_gate/)."""
