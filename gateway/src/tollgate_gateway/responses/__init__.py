"""The OpenAI Responses API (`/v1/responses`) with stored, chainable responses."""
