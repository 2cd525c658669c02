// /docs: Swagger UI on this service's own schema. A script file, not inline, so the page keeps the
// service's Content-Security-Policy (script-src 'self'). Relative URLs, so it also works under a
// reverse proxy's path prefix. With a token configured, "Authorize" takes it (bearer) for "Try it out".
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // never send the schema to validator.swagger.io
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
