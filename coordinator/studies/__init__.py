"""Study files, the study runner and the saved results document."""
