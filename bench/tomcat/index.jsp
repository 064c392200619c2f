<%-- The sesh demo page (sesh/node/demo.py) as a JSP: node name, Session_ID, creation time and a hit
     counter that goes up by one per request, stored in the session (so a lost update shows); JSON
     {"node","route","session_id","created","hits"} when the request accepts application/json.
     The node name comes from -Dsesh.node=...; the route is the session id's suffix after '.'. --%>
<%@ page session="true" trimDirectiveWhitespaces="true" import="java.time.Instant, java.util.Locale" %>
<%
    String node = System.getProperty("sesh.node", "tomcat");
    Object previous = session.getAttribute("hits");
    int hits = (previous instanceof Integer ? (Integer) previous : 0) + 1;
    session.setAttribute("hits", hits);
    session.setAttribute("last_node", node);
    String id = session.getId();
    int dot = id.indexOf('.');
    String route = dot < 0 ? "" : id.substring(dot + 1);
    String created = String.format(Locale.ROOT, "%.3f", session.getCreationTime() / 1000.0);
    String accept = request.getHeader("Accept");
    if (accept != null && accept.contains("application/json")) {
        response.setContentType("application/json");
        out.print("{\"node\": \"" + node + "\", \"route\": \"" + route + "\", \"session_id\": \"" + id
                  + "\", \"created\": " + created + ", \"hits\": " + hits + "}");
        return;
    }
    response.setContentType("text/html; charset=utf-8");
%>
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sesh demo: <%= node %></title></head>
<body>
<h1><%= node %></h1>
<table>
<tr><td>Node</td><td><b><%= node %></b> (route <code><%= route.isEmpty() ? "-" : route %></code>)</td></tr>
<tr><td>Session_ID</td><td><code id="session-id"><%= id %></code></td></tr>
<tr><td>Created</td><td><%= Instant.ofEpochMilli(session.getCreationTime()) %></td></tr>
<tr><td>Hits</td><td><b id="hits"><%= hits %></b></td></tr>
</table>
<p><a href="<%= response.encodeURL("/") %>">Reload</a> &mdash; the Session_ID stays the same and the hit
count goes up by one, whichever node answers.</p>
</body></html>
