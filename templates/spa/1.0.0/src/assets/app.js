/* Sitefleet "spa" template 1.0.0: switches between the pre-rendered views of the page
   without reloading. Reads its data only from the JSON block #app-data; never builds HTML
   from it (textContent and attributes only). Without this script every route is still a
   full page of its own. */
(function () {
  "use strict";

  var dataNode = document.getElementById("app-data");
  var heading = document.getElementById("page-heading");
  if (!dataNode || !heading || !window.history || !history.pushState) return;
  var data = JSON.parse(dataNode.textContent);
  var routes = {};
  data.routes.forEach(function (route) { routes[route.path] = route; });

  var noindex = null; // the robots meta this script added, if any

  function normalize(path) {
    // /app/settings/ and /app/settings are one route; "" is the home page.
    var trimmed = path.replace(/\/+$/, "");
    return trimmed === "" ? "/" : trimmed;
  }

  function show(path, moveFocus) {
    var route = routes[path];
    var key = route ? path : "";
    var views = document.querySelectorAll("main .view");
    for (var i = 0; i < views.length; i++) {
      views[i].hidden = views[i].getAttribute("data-route") !== key;
    }
    var links = document.querySelectorAll(".nav-link");
    for (var j = 0; j < links.length; j++) {
      if (route && normalize(links[j].pathname) === path) {
        links[j].setAttribute("aria-current", "page");
      } else {
        links[j].removeAttribute("aria-current");
      }
    }
    var shown = route || data.notFound;
    // The server answers an unknown address with this page (200): keep it out of search.
    if (!route && !noindex) {
      noindex = document.createElement("meta");
      noindex.name = "robots";
      noindex.content = "noindex";
      document.head.appendChild(noindex);
    } else if (route && noindex) {
      noindex.remove();
      noindex = null;
    }
    heading.textContent = shown.heading;
    document.title = shown.title;
    if (moveFocus) {
      // Screen readers announce the new page's heading; keyboard users continue from it.
      window.scrollTo(0, 0);
      heading.focus();
    }
  }

  document.addEventListener("click", function (event) {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    var link = event.target.closest ? event.target.closest("a[href]") : null;
    if (!link || link.target || link.hasAttribute("download")) return;
    if (link.origin !== location.origin) return;
    var path = normalize(link.pathname);
    if (!routes[path] || link.hash) return;
    event.preventDefault();
    if (path !== normalize(location.pathname)) {
      history.pushState({ path: path }, "", path);
    }
    show(path, true);
  });

  window.addEventListener("popstate", function () {
    show(normalize(location.pathname), true);
  });

  // Deep links the web server answered with the home page (history fallback) get their
  // own view, or "Page not found".
  show(normalize(location.pathname), false);
})();
