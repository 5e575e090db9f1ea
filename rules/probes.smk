# Stage: probes (rules added by its issue).
