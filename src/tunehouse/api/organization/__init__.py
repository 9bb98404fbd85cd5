"""The admin API: projects, their service accounts and API keys (`/v1/organization/projects`)."""
