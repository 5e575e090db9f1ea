# Stage: sae (rules added by its issue).
