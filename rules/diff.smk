# Stage: diff (rules added by its issue).
