# Stage: demo (rules added by its issue).
