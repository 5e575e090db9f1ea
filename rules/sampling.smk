# Stage: sampling (rules added by its issue).
