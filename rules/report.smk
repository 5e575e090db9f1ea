# Stage: report (rules added by its issue).
