# Stage: activations (rules added by its issue).
